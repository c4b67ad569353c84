"""The verbs: one thin file per `lma3d <verb>` (also `python -m jobs.verbs.<verb>`), listed in jobs/cli.py.

A verb parses its flags, builds the config and calls its stage package (training/, evaluation/, serving/,
sweeping/) or pipeline/; nothing else imports a verb, except the demo, which chains them.
"""
