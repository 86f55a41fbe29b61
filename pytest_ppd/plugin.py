"""pytest plugin entry point (options and fixtures arrive with the plugin issue)."""
