"""The registry aliases the system moves: a light module, so the command line can name them without MLflow."""

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"  # kept for one-command rollback
