"""The online half: the Kafka scorer, its model holder, persistence, the development broker and replay."""
