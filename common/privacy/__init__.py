"""Privacy: accounting, ledger, DP plan, central DP, the prior, policy, report, audit."""
