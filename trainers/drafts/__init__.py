"""Drafts: replies the model in use writes for agents, their outcomes and statistics."""
