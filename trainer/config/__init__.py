"""Typed run configuration: the sections (`sections.py`, every key and its default) and how a
config is loaded from YAML + dotted overrides and validated (`loading.py`)."""
from trainer.config.loading import (check_data_paths, config_from_dict, dump_yaml, flatten, load_config,
                                    parse_override, read_yaml, save_config, set_dotted, to_dict, validate)
from trainer.config.sections import (AugmentConfig, CheckpointConfig, CodecConfig, Config, ConfigError,
                                     DataConfig, DistConfig, EvalConfig, ModelConfig, OptimConfig,
                                     PrecisionConfig, ScheduleConfig, TrackingConfig)

__all__ = [
    "AugmentConfig", "CheckpointConfig", "CodecConfig", "Config", "ConfigError", "DataConfig", "DistConfig",
    "EvalConfig", "ModelConfig", "OptimConfig", "PrecisionConfig", "ScheduleConfig", "TrackingConfig",
    "check_data_paths", "config_from_dict", "dump_yaml", "flatten", "load_config", "parse_override",
    "read_yaml", "save_config", "set_dotted", "to_dict", "validate",
]
