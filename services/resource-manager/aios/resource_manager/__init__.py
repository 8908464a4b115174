"""aios.resource_manager: the resource-manager service (DESIGN.md §3). Built by its own issue; registered in aios.cli.services when it runs."""
