"""Tools that consume an environment: export to a Hugging Face folder, zero-shot evaluation, the speed
benchmark, and training of the bundled model zoo. They import ``ffenv`` only."""
