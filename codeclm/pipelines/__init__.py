"""Generation pipelines: conditions -> token LM -> codec audio."""

from codeclm.pipelines.base import GenerationPipeline
from codeclm.pipelines.clone import VoiceClone
from codeclm.pipelines.music import TextToMusic

__all__ = ["GenerationPipeline", "TextToMusic", "VoiceClone"]
