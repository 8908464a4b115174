"""aios.model_registry: the model-registry service (DESIGN.md §3). Built by its own issue; registered in aios.cli.services when it runs."""
