"""Tests of trainers.drafts."""
