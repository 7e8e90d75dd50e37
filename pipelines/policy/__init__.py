"""The decision policy's batch side: backtesting a rules file on the stored decisions, recording changes."""
