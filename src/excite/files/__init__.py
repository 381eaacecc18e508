"""Files: model files, other projects' key names, public weights, run-folder locks."""
