//! The loop: source events → render → diff → engine → runtime; per-service
//! work queue with de-duplication; periodic requeue for drift; rollback and
//! revert trigger. The one place that carries out what the engine decides.
