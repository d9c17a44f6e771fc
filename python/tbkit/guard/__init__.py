"""Never break the live process: the integrity probe, the install gate, the notebook extension."""
