"""An application whose import fails (for DEPLOY_FAILED tests)."""
import dserve as serve
import this_module_does_not_exist  # noqa: F401

app = None
