"""Read-only documents shared by the CLI, the HTTP API and monitoring."""
