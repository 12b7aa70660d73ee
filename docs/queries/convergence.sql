-- Convergence: the first epoch whose val_loss is within 1 % of the run's best, against the
-- epochs actually run (what early stopping could have saved).
WITH best AS (
    SELECT run_id, min(val_loss) AS best_val_loss, max(epoch) AS epochs_run
    FROM epoch_metrics
    WHERE val_loss IS NOT NULL
    GROUP BY run_id
)
SELECT b.run_id, b.best_val_loss, min(m.epoch) AS converged_at_epoch, b.epochs_run,
       b.epochs_run - min(m.epoch) AS epochs_after_convergence
FROM best b
JOIN epoch_metrics m ON m.run_id = b.run_id AND m.val_loss <= b.best_val_loss * 1.01
GROUP BY b.run_id, b.best_val_loss, b.epochs_run
ORDER BY b.run_id
