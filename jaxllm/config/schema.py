"""The root of the config tree: one field per section, in the order a printed config shows them."""

from __future__ import annotations

import dataclasses

from jaxllm.config.schema_data import DataConfig, TokenizerConfig
from jaxllm.config.schema_model import MeshConfig, ModelConfig, PipelineConfig
from jaxllm.config.schema_run import ChatConfig, OptimizerConfig, PostTrainConfig, PPOConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run."""

    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    pipeline: PipelineConfig = PipelineConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    chat: ChatConfig = ChatConfig()
    posttrain: PostTrainConfig = PostTrainConfig()
    ppo: PPOConfig = PPOConfig()
