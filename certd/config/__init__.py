"""The TOML configuration: typed models, the rules across tables, loading."""
