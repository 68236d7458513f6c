"""The inventory: SQLAlchemy models and every query certd makes (the only SQL), engine and schema upgrades."""
