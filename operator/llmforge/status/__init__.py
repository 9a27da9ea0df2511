"""Pure status computation: observed children in, status fields out (phase, conditions, progress, cost)."""
