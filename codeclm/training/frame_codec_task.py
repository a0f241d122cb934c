"""Training of the frame-rate codec (:class:`~codeclm.codec.frame.FrameCodec`): ``task: frame_codec``.

The losses, adversary, balancer, validation and export are the codec task's
(:mod:`codeclm.training.codec_task`); only the generator and its ``model:`` section differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codeclm.codec.frame import FrameCodec, FrameCodecConfig
from codeclm.training import codec_task


@dataclass
class Recipe(codec_task.Recipe):
    model: FrameCodecConfig = field(default_factory=FrameCodecConfig)


class Task(codec_task.Task):
    codec_class = FrameCodec
