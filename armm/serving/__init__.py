"""The OpenAI-compatible HTTP server behind ``armm serve``: ``cli`` (the command), ``engine`` (one generation thread
fed by a queue), ``protocol`` (request schemas and errors), ``app`` (routes). Token streams become text through
``armm.textstream``."""
