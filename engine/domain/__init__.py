"""The domain: values, rules, events and the aggregates. No I/O and no clock: every action
is handed its time; nothing here imports from outside ``engine.domain`` but the standard
library, pydantic and the library's aggregate base."""
