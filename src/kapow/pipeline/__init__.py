"""The pipeline's steps, one module each, in the order a record meets them: filter, sort, persist, commit."""
