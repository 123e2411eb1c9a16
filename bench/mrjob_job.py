"""mrjob, -r local, same mapper, with or without a combiner (--no-combiner)."""


import jobs
from mrjob.job import MRJob
from mrjob.protocol import RawValueProtocol


class Count(MRJob):
    OUTPUT_PROTOCOL = RawValueProtocol

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--mapper-name", default="line_bigrams")
        self.add_passthru_arg("--no-combiner", action="store_true")

    def steps(self):
        from mrjob.step import MRStep

        combiner = None if self.options.no_combiner else self.combiner
        return [MRStep(mapper=self.mapper, combiner=combiner, reducer=self.reducer)]

    def mapper(self, _, line):
        for key, _ in getattr(jobs, self.options.mapper_name)(line):
            yield key, 1

    def combiner(self, key, values):
        yield key, sum(values)

    def reducer(self, key, values):
        yield None, f"{key}\t{sum(values)}"


if __name__ == "__main__":
    Count.run()
