"""Optional integrations with other libraries (extra ``[hf]``); each imports its library lazily."""
