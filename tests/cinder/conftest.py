"""``inner/`` runs only inside .venvs/cinder (test_cinder_driver.py starts it there)."""

collect_ignore = ["inner"]
