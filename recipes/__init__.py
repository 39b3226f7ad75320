"""The shipped recipes, one YAML file per paper setting (installed as prunecli.recipe_files)."""
