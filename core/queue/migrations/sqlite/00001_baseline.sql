-- The queue's tables as they were before migrations were numbered: a
-- database made then already has them, and this changes nothing there.

-- +goose Up
CREATE TABLE IF NOT EXISTS sandbox_sample (
	sha256 TEXT PRIMARY KEY,
	size INTEGER NOT NULL,
	data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sandbox_task (
	id TEXT PRIMARY KEY,
	sha256 TEXT NOT NULL,
	name TEXT NOT NULL,
	profiles TEXT NOT NULL,
	vm TEXT NOT NULL DEFAULT '',
	priority INTEGER NOT NULL,
	state TEXT NOT NULL,
	verdict TEXT NOT NULL DEFAULT '',
	jobs TEXT NOT NULL DEFAULT '',
	cancel_requested INTEGER NOT NULL DEFAULT 0,
	created_ns INTEGER NOT NULL,
	finished_ns INTEGER NOT NULL DEFAULT 0,
	report TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS sandbox_task_created ON sandbox_task (created_ns);
CREATE INDEX IF NOT EXISTS sandbox_task_state ON sandbox_task (state);
CREATE TABLE IF NOT EXISTS sandbox_result (
	task_id TEXT NOT NULL,
	profile TEXT NOT NULL,
	host TEXT NOT NULL,
	result TEXT NOT NULL,
	PRIMARY KEY (task_id, profile));

-- +goose Down
DROP TABLE sandbox_result;
DROP TABLE sandbox_task;
DROP TABLE sandbox_sample;
