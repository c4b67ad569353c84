"""Entry points (`lma3d <verb>` / `python -m jobs.<verb>`) and the glue only they need."""
