"""The QLASS method, step by step: behavior cloning (``bc``), rollouts (``rollout``), exploration trees
(``tree``), Q values (``qvalues``), the QNet (``qnet``, ``qnet_train``), Q-guided search (``search``), trajectory
selection (``selection``) and self-training (``self_training``).
"""
