"""safeguard: an inference-time safety layer for Hugging Face diffusers text-to-image pipelines.

It enforces a usage policy (by default the Stability AI Acceptable Use Policy, as versioned data) in three
stages: prompts are checked before any denoiser step, generation can be steered away from prohibited
concepts, and decoded images are checked before they are returned.

Example:
    >>> import safeguard
    >>> from safeguard.testing import tiny
    >>> pipe = safeguard.protect(tiny.sd_pipeline())
    >>> pipe("a lighthouse at dawn", num_inference_steps=2).prompt_verdicts[0].flagged
    False
"""

from safeguard.checks import check_images, check_prompt, check_prompts
from safeguard.config import Settings, available_presets, resolve_settings
from safeguard.disclosure import save, verify
from safeguard.errors import (
    ConfigError,
    ContentBlocked,
    ImageBlocked,
    InputError,
    PromptBlocked,
    SafeguardError,
    UnsupportedPipelineError,
)
from safeguard.pipelines import PipelineFamily, register_pipeline, unregister_pipeline
from safeguard.policy import Category, Policy, available_policies, load_policy
from safeguard.protect import ProtectedPipeline, ProtectedPipelineOutput, protect, unprotect
from safeguard.verdict import Action, Finding, Verdict

__version__ = "0.1.0"

__all__ = [
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
