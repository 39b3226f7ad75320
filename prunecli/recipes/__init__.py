"""Recipes: one YAML file per paper setting, checked, run and reported (DESIGN.md, "Recipes").

`schema` validates a file, `library` finds the shipped ones, `runner` runs the stages in
a resumable run directory, `check` computes the architecture-only numbers on random
weights, and `report` writes results and plots.
"""
