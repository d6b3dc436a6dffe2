"""`gpt2 webtext`: a WebText-style corpus from Reddit submission dumps, as Radford et al. (2019, section 2.2)
built it, on datatrove (the engine behind FineWeb) so that the same pipeline runs on one machine, Slurm or Ray.

  links     gpt2.webtext.links      select and normalise the outbound links of submissions with >= 3 karma
  fetch     gpt2.webtext.fetch      a polite, resumable crawler (robots.txt, per-host limits, SQLite state)
  pipeline  gpt2.webtext.pipeline   extraction, dedup, filters, the corpus writer and summary.json

The submodules import datatrove; this package's own import does not, so naming it stays cheap.
"""
