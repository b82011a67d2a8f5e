// dk_fir4: 4-tap FIR filter with constant signed coefficients.
// Every cycle with in_valid, a new sample enters a 4-deep delay line and
// y = C0*x[n] + C1*x[n-1] + C2*x[n-2] + C3*x[n-3] is computed, registered and
// flagged with out_valid on the next cycle. The accumulator is wide enough
// that the sum cannot overflow: 2*W + 2 bits.
module dk_fir4 #(
    parameter W  = 12,
    parameter signed [W-1:0] C0 = 12'sd64,
    parameter signed [W-1:0] C1 = 12'sd192,
    parameter signed [W-1:0] C2 = 12'sd192,
    parameter signed [W-1:0] C3 = 12'sd64
) (
    input                         clk,
    input                         rst,
    input                         in_valid,
    input      signed [W-1:0]     x,
    output reg                    out_valid,
    output reg signed [2*W+1:0]   y
);
    reg signed [W-1:0] d1, d2, d3;

    always @(posedge clk) begin
        if (rst) begin
            d1        <= 0;
            d2        <= 0;
            d3        <= 0;
            y         <= 0;
            out_valid <= 1'b0;
        end else begin
            out_valid <= in_valid;
            if (in_valid) begin
                y  <= C0 * x + C1 * d1 + C2 * d2 + C3 * d3;
                d1 <= x;
                d2 <= d1;
                d3 <= d2;
            end
        end
    end
endmodule
