"""The root of the config tree: one field per section, in the order a printed config shows them."""

from __future__ import annotations

import dataclasses

from jaxllm.config.schema_data import DataConfig, TokenizerConfig
from jaxllm.config.schema_model import MeshConfig, ModelConfig, PipelineConfig
from jaxllm.config.schema_posttrain import GRPOConfig
from jaxllm.config.schema_run import ChatConfig, OptimizerConfig, PostTrainConfig, PPOConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run."""

    #: The decoder's architecture: sizes, norms, positions, MLP, attention, dtypes, remat.
    model: ModelConfig = ModelConfig()
    #: The device mesh's axis sizes and changes to the logical-axis rules.
    mesh: MeshConfig = MeshConfig()
    #: The pipeline schedule, used when mesh.pipeline > 1.
    pipeline: PipelineConfig = PipelineConfig()
    #: Which tokenizer the run uses, and how `jaxllm tokenizer train` makes one.
    tokenizer: TokenizerConfig = TokenizerConfig()
    #: Raw text -> prepared shards -> training rows: inputs, filters, dedup, split, row length.
    data: DataConfig = DataConfig()
    #: AdamW, the warmup + cosine schedule, gradient clipping.
    optimizer: OptimizerConfig = OptimizerConfig()
    #: The training loop: steps, global batch, accumulation, cadences, checkpoints, the run directory.
    train: TrainConfig = TrainConfig()
    #: How a conversation becomes text (role templates or an imported Jinja template).
    chat: ChatConfig = ChatConfig()
    #: Instruction tuning, DPO and reward models: data, the run to start from, loss coefficients.
    posttrain: PostTrainConfig = PostTrainConfig()
    #: PPO against a reward model: rollouts, KL control, clipping, GAE, the critic.
    ppo: PPOConfig = PPOConfig()
    #: GRPO with verifiable rewards or a reward model: groups of replies per prompt, no critic.
    grpo: GRPOConfig = GRPOConfig()
