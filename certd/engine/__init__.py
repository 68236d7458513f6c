"""The operations on certificates (renew, deploy, import, revoke, install, CA rotation) and their assembly."""
