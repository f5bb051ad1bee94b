"""The one-command demo: ``python -m example_project.demo`` (see ``example_project/README.md``)."""
