// One kernel's instruction trace, written to the file named by plusarg PATH_ARG (none: no
// trace): a line `I cycle pc` for each issue, `R cycle pc` for each retirement (lane by lane),
// and `D cycle` when the kernel is done (the file is flushed then). Outside reset only.
`timescale 1ns/1ps
module tandem_trace_writer #(
    parameter PC_W = 10,
    parameter LANES = 2,
    parameter PATH_ARG = "trace=%s"
) (
    input wire                  clk,
    input wire                  rst,
    input wire [31:0]           cycle,
    input wire                  issue,
    input wire [PC_W-1:0]       issue_pc,
    input wire [LANES-1:0]      retire,
    input wire [LANES*PC_W-1:0] retire_pc,  // lane k at [k*PC_W +: PC_W]
    input wire                  done
);
    integer file;
    integer k;
    reg [8*512-1:0] path;
    initial file = $value$plusargs(PATH_ARG, path) ? $fopen(path, "w") : 0;
    always @(posedge clk) begin
        if (!rst && file != 0) begin
            if (issue) $fwrite(file, "I %0d %0d\n", cycle, issue_pc);
            for (k = 0; k < LANES; k = k + 1)
                if (retire[k]) $fwrite(file, "R %0d %0d\n", cycle, retire_pc[k*PC_W +: PC_W]);
            if (done) begin $fwrite(file, "D %0d\n", cycle); $fflush(file); end
        end
    end
endmodule
