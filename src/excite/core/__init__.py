"""The core: errors, the model description, the registry. Imports no torch and nothing above it."""
