"""Trust in the log: reading and verifying stored events, quarantine, audits, Merkle trees and
signed checkpoints."""
