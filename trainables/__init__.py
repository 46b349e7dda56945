"""Gradient phases that Ray Tune runs as trials (torch lives here, never in ``ray_llm_search``)."""
