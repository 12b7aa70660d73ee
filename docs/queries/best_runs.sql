-- Hyperparameters and best validation loss of every training, best first.
SELECT r.run_id, r.dataflow, r.status, h.optimizer, h.learning_rate, h.batch_size,
       min(m.val_loss) AS best_val_loss, max(m.epoch) AS epochs
FROM runs r
JOIN hyperparameters h ON h.run_id = r.run_id
JOIN epoch_metrics m ON m.task_id = h.task_id
WHERE m.val_loss IS NOT NULL
GROUP BY r.run_id, r.dataflow, r.status, h.optimizer, h.learning_rate, h.batch_size
ORDER BY best_val_loss
