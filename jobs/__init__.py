"""Entry points (`lma3d <verb>` / `python -m jobs.verbs.<verb>`) and the glue only they need."""
