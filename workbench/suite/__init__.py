"""Running a whole experiments file: the runner (papermill, one shared kernel), the dry run, and
``doctor`` (what a backend needs on this machine)."""
