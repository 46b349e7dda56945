"""``python -m ray_llm_search.selection``, the selection study, is now
``python -m ray_llm_search.compare.selection_study`` (a study of the comparison package): this command name is kept for one release and says so. Import from
``ray_llm_search.compare.selection_study``; this module defines nothing."""

if __name__ == "__main__":
    import warnings

    from ray_llm_search.compare.selection_study import main

    warnings.warn("python -m ray_llm_search.selection is now python -m ray_llm_search.compare.selection_study; "
                  "the old command name goes in the next release", DeprecationWarning, stacklevel=1)
    main()
