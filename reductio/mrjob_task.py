"""``python -m reductio.mrjob_task``: mrjob's task command line on a worker; the runner is reductio/mrjob/task.py."""

from reductio.mrjob.task import main

if __name__ == "__main__":
    main()
