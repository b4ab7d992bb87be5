"""The public surface is pinned: adding or removing a name is a deliberate change of this test."""

import safeguard
from safeguard import errors


def test_all_is_pinned():
    assert sorted(safeguard.__all__) == sorted(
        [
            "Action",
            "Category",
            "ConfigError",
            "ContentBlocked",
            "Finding",
            "ImageBlocked",
            "InputError",
            "PipelineFamily",
            "Policy",
            "PromptBlocked",
            "ProtectedPipeline",
            "ProtectedPipelineOutput",
            "SafeguardError",
            "Settings",
            "UnsupportedPipelineError",
            "Verdict",
            "__version__",
            "available_policies",
            "available_presets",
            "check_images",
            "check_prompt",
            "check_prompts",
            "load_policy",
            "protect",
            "register_pipeline",
            "resolve_settings",
            "save",
            "unprotect",
            "unregister_pipeline",
            "verify",
        ]
    )
    for name in safeguard.__all__:
        assert hasattr(safeguard, name), name


def test_exception_tree():
    assert issubclass(errors.ConfigError, errors.SafeguardError)
    assert issubclass(errors.UnsupportedPipelineError, errors.SafeguardError)
    assert issubclass(errors.InputError, errors.SafeguardError)
    assert issubclass(errors.PromptBlocked, errors.ContentBlocked)
    assert issubclass(errors.ImageBlocked, errors.ContentBlocked)
    assert issubclass(errors.ContentBlocked, errors.SafeguardError)
    # Callers that catch the built-in kinds keep working.
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.UnsupportedPipelineError, TypeError)


def test_blocked_exceptions_carry_their_verdict():
    verdict = safeguard.check_prompt("a pipe bomb")
    err = safeguard.PromptBlocked("blocked", verdict)
    assert err.verdict is verdict and err.verdicts == (verdict,)


def test_production_code_never_imports_the_test_helpers():
    import ast
    from pathlib import Path

    root = Path(safeguard.__file__).resolve().parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if "testing" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(n == "safeguard.testing" or n.startswith("safeguard.testing.") for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == [], offenders
