"""Teacher training and progressive distillation, stage by stage."""
