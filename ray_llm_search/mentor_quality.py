"""``python -m ray_llm_search.mentor_quality``, the mentor's own figure, is now
``python -m ray_llm_search.compare.mentor_quality`` (a study of the comparison package): this command name is kept for one release and says so. Import from
``ray_llm_search.compare.mentor_quality``; this module defines nothing."""

if __name__ == "__main__":
    import sys
    import warnings

    from ray_llm_search.compare.mentor_quality import main

    warnings.warn("python -m ray_llm_search.mentor_quality is now python -m ray_llm_search.compare.mentor_quality; "
                  "the old command name goes in the next release", DeprecationWarning, stacklevel=1)
    sys.exit(main())
