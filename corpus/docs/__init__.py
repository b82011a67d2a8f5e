"""EDA documentation: crawl sites or read local doc folders → clean sections → chunks (``DOCS_SCHEMA``).

Stages (plain functions / callables, unit-tested without Ray; only ``jobs.scrape_docs`` calls Ray):

- ``sources``: typed source configs (a site, or a local directory for air-gapped clusters).
- ``crawl``: aiohttp crawler with robots.txt, per-host limits, retries, size cap and an
  ETag/Last-Modified cache; local-directory reader. Both yield page rows (``PAGES_SCHEMA``).
- ``extract``: HTML / Markdown / reStructuredText / text → title + sections of blocks.
- ``chunk``: sections → size-bounded chunks → ``DOCS_SCHEMA`` rows, exact dedup by text hash.
"""
